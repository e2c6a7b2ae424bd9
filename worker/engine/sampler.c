/* sampler.c — see sampler.h for the contract and the order of operations. */
#include "worker/engine/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct sampler {
    int vocab;
    float *probs;      /* [vocab] */
    int32_t *cand;     /* [vocab] candidate ids */
    uint32_t *stamp;   /* [vocab] marks "seen in this call" */
    uint32_t *count;   /* [vocab] output occurrences, valid where stamp == epoch */
    uint32_t epoch;
};

void sampling_params_default(sampling_params *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
}

void sampling_params_from_request(sampling_params *p, const proto_request *q, uint64_t seed) {
    sampling_params_default(p);
    if (!isnan(q->temperature)) p->temperature = (float)q->temperature;
    if (!isnan(q->top_p)) p->top_p = (float)q->top_p;
    if (q->top_k != PROTO_UNSET) p->top_k = q->top_k;
    if (!isnan(q->min_p)) p->min_p = (float)q->min_p;
    if (!isnan(q->repetition_penalty)) p->repetition_penalty = (float)q->repetition_penalty;
    if (!isnan(q->presence_penalty)) p->presence_penalty = (float)q->presence_penalty;
    if (!isnan(q->frequency_penalty)) p->frequency_penalty = (float)q->frequency_penalty;
    p->seed = seed;
}

uint64_t sampler_seed_draw(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    const int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    return ((uint64_t)ms * 0x9e3779b97f4a7c15ull) ^ (uint64_t)rand();
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

double sampler_uniform(uint64_t seed, uint64_t position) {
    uint64_t r = splitmix64(splitmix64(seed) ^ splitmix64(position ^ 0x5851f42d4c957f2dull));
    return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

sampler *sampler_create(int vocab) {
    sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->vocab = vocab;
    s->probs = malloc((size_t)vocab * sizeof *s->probs);
    s->cand = malloc((size_t)vocab * sizeof *s->cand);
    s->stamp = calloc((size_t)vocab, sizeof *s->stamp);
    s->count = calloc((size_t)vocab, sizeof *s->count);
    if (!s->probs || !s->cand || !s->stamp || !s->count) {
        sampler_destroy(s);
        return NULL;
    }
    return s;
}

void sampler_destroy(sampler *s) {
    if (!s) return;
    free(s->probs);
    free(s->cand);
    free(s->stamp);
    free(s->count);
    free(s);
}

static void next_epoch(sampler *s) {
    if (++s->epoch == 0) { /* wrapped: reset the marks once every 4G calls */
        memset(s->stamp, 0, (size_t)s->vocab * sizeof *s->stamp);
        s->epoch = 1;
    }
}

static void apply_penalties(sampler *s, const sampling_params *p, float *logits, const int32_t *hist, int n_hist,
                            int n_prompt) {
    const int V = s->vocab;
    if (p->repetition_penalty != 1.0f && p->repetition_penalty > 0) {
        next_epoch(s);
        for (int i = 0; i < n_hist; i++) {
            int32_t id = hist[i];
            if (id < 0 || id >= V || s->stamp[id] == s->epoch) continue;
            s->stamp[id] = s->epoch;
            logits[id] = logits[id] > 0 ? logits[id] / p->repetition_penalty : logits[id] * p->repetition_penalty;
        }
    }
    if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) {
        next_epoch(s);
        for (int i = n_prompt; i < n_hist; i++) {
            int32_t id = hist[i];
            if (id < 0 || id >= V) continue;
            if (s->stamp[id] != s->epoch) {
                s->stamp[id] = s->epoch;
                s->count[id] = 0;
            }
            s->count[id]++;
        }
        for (int i = n_prompt; i < n_hist; i++) {
            int32_t id = hist[i];
            if (id < 0 || id >= V || s->stamp[id] != s->epoch) continue;
            logits[id] -= p->frequency_penalty * (float)s->count[id] + p->presence_penalty;
            s->stamp[id] = s->epoch - 1; /* apply once per id */
        }
    }
}

static const float *g_probs; /* qsort has no context argument */
static int cmp_prob_desc(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float px = g_probs[x], py = g_probs[y];
    if (px > py) return -1;
    if (px < py) return 1;
    return x < y ? -1 : x > y;
}

/* Keep the k most likely of cand[0..n) (sorted descending), return k. */
static int keep_top_k(sampler *s, int n, int k) {
    g_probs = s->probs;
    if (k >= n) {
        qsort(s->cand, (size_t)n, sizeof *s->cand, cmp_prob_desc);
        return n;
    }
    /* Partial selection: a sorted window of the best k seen so far. */
    int32_t *best = s->cand; /* reuse the front of cand as the window */
    int m = 0;
    for (int i = 0; i < n; i++) {
        int32_t id = s->cand[i];
        if (m == k && cmp_prob_desc(&id, &best[k - 1]) >= 0) continue;
        int j = m < k ? m++ : k - 1;
        while (j > 0 && cmp_prob_desc(&id, &best[j - 1]) < 0) {
            best[j] = best[j - 1];
            j--;
        }
        best[j] = id;
    }
    return m;
}

int32_t sampler_sample(sampler *s, const sampling_params *p, float *logits, const int32_t *hist, int n_hist,
                       int n_prompt, uint64_t position) {
    return sampler_sample_masked(s, p, logits, NULL, hist, n_hist, n_prompt, position);
}

int32_t sampler_sample_masked(sampler *s, const sampling_params *p, float *logits, const uint32_t *allow,
                              const int32_t *hist, int n_hist, int n_prompt, uint64_t position) {
    const int V = s->vocab;
    apply_penalties(s, p, logits, hist, n_hist, n_prompt);
    if (allow)
        for (int i = 0; i < V; i++)
            if (!(allow[i >> 5] >> (i & 31) & 1u)) logits[i] = -INFINITY;

    if (p->temperature <= 0.0f || p->top_k == 1) {
        int32_t best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    float mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > mx) mx = logits[i];
    const float inv_t = 1.0f / p->temperature;
    double total = 0;
    for (int i = 0; i < V; i++) {
        s->probs[i] = expf((logits[i] - mx) * inv_t);
        total += s->probs[i];
        s->cand[i] = i;
    }
    int n = V;
    int sorted = 0;
    if (p->top_k > 0 && p->top_k < V) {
        n = keep_top_k(s, n, p->top_k);
        sorted = 1;
    }
    if (p->top_p > 0.0f && p->top_p < 1.0f) {
        if (!sorted) n = keep_top_k(s, n, n);
        sorted = 1;
        double mass = 0, kept_total = 0;
        for (int i = 0; i < n; i++) kept_total += s->probs[s->cand[i]];
        int keep = n;
        for (int i = 0; i < n; i++) {
            mass += s->probs[s->cand[i]];
            if (mass >= p->top_p * kept_total) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (p->min_p > 0.0f) {
        const float thresh = p->min_p * 1.0f; /* the max prob is exp(0) = 1 before normalisation */
        int m = 0;
        for (int i = 0; i < n; i++)
            if (s->probs[s->cand[i]] >= thresh) s->cand[m++] = s->cand[i];
        n = m;
    }
    total = 0;
    for (int i = 0; i < n; i++) total += s->probs[s->cand[i]];
    const double target = sampler_uniform(p->seed, position) * total;
    double acc = 0;
    for (int i = 0; i < n; i++) {
        acc += s->probs[s->cand[i]];
        if (acc > target) return s->cand[i];
    }
    return s->cand[n - 1];
}

/* ------------------------------------------------------------ logprobs */

void sampler_logprobs_compute(const float *logits, int vocab, int32_t token, int n_top, sampler_logprobs *out) {
    if (n_top > SAMPLER_MAX_LOGPROBS) n_top = SAMPLER_MAX_LOGPROBS;
    if (n_top > vocab) n_top = vocab;
    if (n_top < 0) n_top = 0;
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    /* One pass: the sum of exp(x - max) and a sorted window of the n_top
     * largest logits.  Ids arrive in increasing order, so a later id that
     * equals an entry goes after it: ties end up lower id first. */
    double sum = 0;
    int m = 0;
    for (int i = 0; i < vocab; i++) {
        const float x = logits[i];
        sum += expf(x - mx);
        if (n_top == 0 || (m == n_top && !(x > logits[out->top_ids[m - 1]]))) continue;
        int j = m < n_top ? m++ : n_top - 1;
        while (j > 0 && x > logits[out->top_ids[j - 1]]) {
            out->top_ids[j] = out->top_ids[j - 1];
            j--;
        }
        out->top_ids[j] = i;
    }
    /* All -inf (a fully masked row) leaves nothing to normalise: -inf each. */
    const double lse = isfinite(mx) ? (double)mx + log(sum) : INFINITY;
    out->n_top = m;
    for (int k = 0; k < m; k++) out->top_logprobs[k] = (double)logits[out->top_ids[k]] - lse;
    out->logprob = token >= 0 && token < vocab ? (double)logits[token] - lse : -INFINITY;
}
