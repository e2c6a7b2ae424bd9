/*
 * rope.c — rotary position embedding, Hugging Face "rotate_half" layout:
 * within each head, element i pairs with element i + head_dim/2.
 *   out[i]        = x[i] * cos(p f_i) - x[i + h] * sin(p f_i)
 *   out[i + h]    = x[i + h] * cos(p f_i) + x[i] * sin(p f_i)
 * The angle is formed in float (p * f_i) as transformers does; cos/sin are
 * taken in double and rounded, so both paths agree exactly.
 */
#include <math.h>

#include "kernels/cpu/cpu.h"

/* The angles' cos and sin of one position, once for q and k (libm in
 * double is most of rope's time). */
static inline void rope_angles(float *c, float *s, int half, int pos, const float *inv_freq) {
    for (int i = 0; i < half; i++) {
        float ang = (float)pos * inv_freq[i];
        c[i] = (float)cos((double)ang);
        s[i] = (float)sin((double)ang);
    }
}

/* Head by head, i in order: the loop over i vectorizes. */
static inline void rope_row(float *x, int n_heads, int head_dim, const float *c, const float *s) {
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float a = v[i], b = v[i + half];
            v[i] = a * c[i] - b * s[i];
            v[i + half] = b * c[i] + a * s[i];
        }
    }
}

#define ROPE_MAX_HALF 512

void cpu_rope(llmq_backend *be, void *q, void *k, const int32_t *positions, int n, int n_heads, int n_kv_heads,
              int head_dim, const float *inv_freq) {
    if (head_dim / 2 > ROPE_MAX_HALF) { /* no model has such heads; the plain loops do */
        cpu_rope_ref(be, q, k, positions, n, n_heads, n_kv_heads, head_dim, inv_freq);
        return;
    }
#pragma omp parallel for schedule(static) if (n > 4)
    for (int t = 0; t < n; t++) {
        float c[ROPE_MAX_HALF], s[ROPE_MAX_HALF];
        rope_angles(c, s, head_dim / 2, positions[t], inv_freq);
        rope_row((float *)q + (size_t)t * n_heads * head_dim, n_heads, head_dim, c, s);
        rope_row((float *)k + (size_t)t * n_kv_heads * head_dim, n_kv_heads, head_dim, c, s);
    }
}

void cpu_rope_ref(llmq_backend *be, void *q, void *k, const int32_t *positions, int n, int n_heads,
                  int n_kv_heads, int head_dim, const float *inv_freq) {
    (void)be;
    const int half = head_dim / 2;
    for (int t = 0; t < n; t++)
        for (int which = 0; which < 2; which++) {
            int nh = which ? n_kv_heads : n_heads;
            float *x = (float *)(which ? k : q) + (size_t)t * nh * head_dim;
            for (int h = 0; h < nh; h++)
                for (int i = 0; i < half; i++) {
                    float ang = (float)positions[t] * inv_freq[i];
                    double c = cos((double)ang), s = sin((double)ang);
                    float *v = x + (size_t)h * head_dim;
                    double a = v[i], b = v[i + half];
                    v[i] = (float)(a * (float)c - b * (float)s);
                    v[i + half] = (float)(b * (float)c + a * (float)s);
                }
        }
}
