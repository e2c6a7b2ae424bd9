/*
 * moe.c — Mixtral's sparse MLP (be_ops.moe, backend.h).
 *
 * Both paths route every row the same way (route_rows) and combine its
 * experts' outputs the same way (combine); they differ in how the experts
 * run.  Fast path: the step's (row, expert) pairs are grouped by expert
 * (a counting sort), and each expert with rows runs once over all of them:
 * gathered rows -> gate and up matmuls -> SwiGLU -> down matmul -> the
 * outputs scattered back to their (row, slot).  An expert's weights are so
 * read once per step, whatever the batch.  The matmuls give each row the
 * bits it gets alone (matmul.c), routing and combining are per row, so a
 * row's result does not depend on which other rows chose its experts.
 * Reference path: every row through each of its experts on its own.
 */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu.h"

/* The route buffer (be_moe_route_bytes): per (row, slot) its expert and
 * weight, the slots grouped by expert, and where each expert's group starts. */
typedef struct moe_route {
    int32_t *expert; /* [n * k], each row's experts in increasing order */
    float *weight;   /* [n * k] */
    int32_t *order;  /* [n * k] slot indices (row * k + j) grouped by expert */
    int32_t *start;  /* [E + 1] expert e's slots are order[start[e] .. start[e + 1]) */
} moe_route;

static moe_route route_of(void *buf, int n, const be_moe *moe) {
    const size_t nk = (size_t)n * moe->top_k;
    moe_route r;
    r.expert = buf;
    r.weight = (float *)(r.expert + nk);
    r.order = (int32_t *)(r.weight + nk);
    r.start = r.order + nk;
    return r;
}

/* Softmax of the row's router logits (F32), its top k (the lower expert on
 * a tie), renormalised over the chosen, then sorted by expert: the order the
 * outputs are summed in (transformers adds them expert by expert). */
static void route_row(const float *logit, int E, int k, int32_t *ex, float *wt) {
    float mx = logit[0];
    for (int e = 1; e < E; e++) mx = logit[e] > mx ? logit[e] : mx;
    float sum = 0;
    for (int e = 0; e < E; e++) sum += expf(logit[e] - mx);
    float chosen = 0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        float pb = 0;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int t = 0; t < j; t++) taken |= ex[t] == e;
            const float p = expf(logit[e] - mx) / sum;
            if (!taken && (best < 0 || p > pb)) {
                best = e;
                pb = p;
            }
        }
        ex[j] = best;
        wt[j] = pb;
        chosen += pb;
    }
    for (int j = 0; j < k; j++) wt[j] /= chosen;
    for (int j = 1; j < k; j++) /* insertion sort by expert: k is small */
        for (int t = j; t > 0 && ex[t - 1] > ex[t]; t--) {
            const int32_t e = ex[t];
            const float w = wt[t];
            ex[t] = ex[t - 1];
            wt[t] = wt[t - 1];
            ex[t - 1] = e;
            wt[t - 1] = w;
        }
}

static void route_rows(moe_route *r, const float *logits, int n, const be_moe *moe) {
    const int E = moe->n_experts, k = moe->top_k;
    for (int i = 0; i < n; i++)
        route_row(logits + (size_t)i * E, E, k, r->expert + (size_t)i * k, r->weight + (size_t)i * k);
}

/* out[i] = sum over row i's slots j (experts in increasing order) of
 * weight * ys[i * k + j]: each product rounded, then added (as transformers). */
static void combine(float *out, const float *ys, const moe_route *r, int n, int k, int d) {
#pragma omp parallel for schedule(static) if ((size_t)n * d > 16384)
    for (int i = 0; i < n; i++) {
        float *o = out + (size_t)i * d;
        memset(o, 0, (size_t)d * sizeof(float));
        for (int j = 0; j < k; j++) {
            const float w = r->weight[(size_t)i * k + j];
            const float *y = ys + ((size_t)i * k + j) * d;
            for (int c = 0; c < d; c++) {
                const float p = w * y[c];
                o[c] += p;
            }
        }
    }
}

void cpu_moe(llmq_backend *be, void *out, const void *x, const void *router_logits, const be_moe *moe, int n,
             const be_moe_scratch *ws) {
    const int E = moe->n_experts, k = moe->top_k, d = moe->w2[0].rows, I = moe->w1[0].rows;
    moe_route r = route_of(ws->route, n, moe);
    route_rows(&r, router_logits, n, moe);
    /* counting sort of the slots by expert */
    memset(r.start, 0, ((size_t)E + 1) * sizeof(int32_t));
    const int nk = n * k;
    for (int s = 0; s < nk; s++) r.start[r.expert[s] + 1]++;
    for (int e = 0; e < E; e++) r.start[e + 1] += r.start[e];
    for (int s = 0; s < nk; s++) r.order[r.start[r.expert[s]]++] = s; /* start[e] moves to the end of e ... */
    for (int e = E; e > 0; e--) r.start[e] = r.start[e - 1];          /* ... and back */
    r.start[0] = 0;
    float *xs = ws->xs, *gate = ws->gate, *up = ws->up, *ys = ws->ys;
    const float *xf = x;
    for (int e = 0; e < E; e++) {
        const int32_t *slots = r.order + r.start[e];
        const int cnt = r.start[e + 1] - r.start[e];
        if (!cnt) continue;
        for (int t = 0; t < cnt; t++)
            memcpy(xs + (size_t)t * d, xf + (size_t)(slots[t] / k) * d, (size_t)d * sizeof(float));
        cpu_matmul(be, gate, xs, &moe->w1[e], NULL, cnt);
        cpu_matmul(be, up, xs, &moe->w3[e], NULL, cnt);
        cpu_swiglu(be, gate, gate, up, cnt, I);
        cpu_matmul(be, xs, gate, &moe->w2[e], NULL, cnt); /* the rows are read: xs takes the outputs */
        for (int t = 0; t < cnt; t++)
            memcpy(ys + (size_t)slots[t] * d, xs + (size_t)t * d, (size_t)d * sizeof(float));
    }
    combine(out, ys, &r, n, k, d);
}

void cpu_moe_ref(llmq_backend *be, void *out, const void *x, const void *router_logits, const be_moe *moe, int n,
                 const be_moe_scratch *ws) {
    const int k = moe->top_k, d = moe->w2[0].rows, I = moe->w1[0].rows;
    moe_route r = route_of(ws->route, n, moe);
    route_rows(&r, router_logits, n, moe);
    float *gate = ws->gate, *up = ws->up, *ys = ws->ys;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) {
            const int e = r.expert[(size_t)i * k + j];
            const float *xi = (const float *)x + (size_t)i * d;
            cpu_matmul_ref(be, gate, xi, &moe->w1[e], NULL, 1);
            cpu_matmul_ref(be, up, xi, &moe->w3[e], NULL, 1);
            cpu_swiglu_ref(be, gate, gate, up, 1, I);
            cpu_matmul_ref(be, ys + ((size_t)i * k + j) * d, gate, &moe->w2[e], NULL, 1);
        }
    combine(out, ys, &r, n, k, d);
}
