/*
 * elementwise_tmpl.h — the vectorized pieces of the elementwise ops
 * (elementwise_isa.h), written once and instantiated per instruction-set
 * path (elementwise_avx2.c, elementwise_avx512.c).  Not a public header:
 * include it once per translation unit after defining
 *
 *   EW_FN(name)                the instantiation's names (name##_avx512)
 *   ew_v, ew_vi, EW_VW         F32 and int32 vectors, lanes (8 or 16)
 *   ew_load, ew_store, ew_set1, ew_add, ew_sub, ew_mul, ew_div, ew_fma,
 *   ew_min, ew_max (NaN in the first operand kept), ew_round (to nearest),
 *   ew_cvt (F32 -> int32 of an integral value), ew_pow2 (2^n as F32, n an
 *   int32 vector in [-126, 127])
 *   ew_abs, ew_fms(a, b, c) (a b - c, rounded once), ew_if_neg(x, a, b)
 *   (a where x < 0, else b)
 *   ew_vd, ew_dzero, ew_dload(x, half): EW_VW/2 floats widened to double
 *   (half 0: the first EW_VW/2 at x, 1: the next), ew_dset1, ew_dadd,
 *   ew_dsub, ew_dfma, ew_dsum(a0, a1): a0 + a1 then its lanes (fixed order)
 */

#include "kernels/cpu/vexp.h" /* EW_FN(ew_exp) */

void EW_FN(cpu_swiglu_row)(float *o, const float *g, const float *u, size_t n) {
    size_t i = 0;
    const ew_v one = ew_set1(1.0f), zero = ew_set1(0.0f);
    for (; i + EW_VW <= n; i += EW_VW) {
        const ew_v gv = ew_load(g + i);
        const ew_v e = EW_FN(ew_exp)(ew_sub(zero, gv));
        ew_store(o + i, ew_mul(ew_div(gv, ew_add(one, e)), ew_load(u + i)));
    }
    if (i < n) { /* the tail through the same lanes, so it rounds alike */
        float gt[EW_VW] = {0}, ut[EW_VW] = {0}, ot[EW_VW];
        memcpy(gt, g + i, (n - i) * sizeof(float));
        memcpy(ut, u + i, (n - i) * sizeof(float));
        EW_FN(cpu_swiglu_row)(ot, gt, ut, EW_VW);
        memcpy(o + i, ot, (n - i) * sizeof(float));
    }
}

/*
 * GELU, x Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2.  erfc(z) for z >= 0
 * is exp(-z^2) g(t), t = 1 / (1 + z / 2), g a degree-10 polynomial in t
 * fitted (least squares on the relative error, z in [0, 9.5]) to within
 * 2.3e-8 of erfc(z) exp(z^2), so erfc keeps its relative accuracy far into
 * the tail; z^2 = x^2 / 2 is carried as hi + lo (FMA), since exp(-z^2)
 * would otherwise inherit z^2's rounding times z^2.  Phi(x) for x < 0 is
 * that half-erfc, 1 minus it otherwise.  Within ~1e-6 relative of the
 * exact GELU wherever |GELU| > 1e-3, absolute 1e-6 elsewhere; NaN stays
 * NaN.
 */
static inline __attribute__((always_inline)) ew_v EW_FN(ew_gelu)(ew_v x) {
    static const float c[11] = {9.055001101e-06f,  2.818347514e-01f,  2.853619456e-01f, 2.231871933e-01f,
                                2.853813171e-01f,  -2.504123747e-01f, 6.788801551e-01f, -9.578239322e-01f,
                                6.324387193e-01f,  -2.057177722e-01f, 2.686091512e-02f};
    const ew_v xx = ew_mul(x, x);
    const ew_v hi = ew_mul(xx, ew_set1(0.5f)), lo = ew_mul(ew_fms(x, x, xx), ew_set1(0.5f));
    const ew_v z = ew_mul(ew_abs(x), ew_set1(0.70710678118654752f));
    const ew_v t = ew_div(ew_set1(1.0f), ew_fma(z, ew_set1(0.5f), ew_set1(1.0f)));
    ew_v g = ew_set1(c[10]);
    for (int i = 9; i >= 0; i--) g = ew_fma(g, t, ew_set1(c[i]));
    /* exp(-hi - lo) = exp(-hi) (1 - lo), |lo| <= ulp(hi) */
    const ew_v e = ew_mul(EW_FN(ew_exp)(ew_sub(ew_set1(0.0f), hi)), ew_sub(ew_set1(1.0f), lo));
    const ew_v h = ew_mul(ew_mul(e, g), ew_set1(0.5f));
    return ew_mul(x, ew_if_neg(x, h, ew_sub(ew_set1(1.0f), h)));
}

void EW_FN(cpu_gelu_row)(float *o, const float *x, size_t n) {
    size_t i = 0;
    for (; i + EW_VW <= n; i += EW_VW) ew_store(o + i, EW_FN(ew_gelu)(ew_load(x + i)));
    if (i < n) { /* the tail through the same lanes, so it rounds alike */
        float xt[EW_VW] = {0}, ot[EW_VW];
        memcpy(xt, x + i, (n - i) * sizeof(float));
        ew_store(ot, EW_FN(ew_gelu)(ew_load(xt)));
        memcpy(o + i, ot, (n - i) * sizeof(float));
    }
}

double EW_FN(cpu_sumsq)(const float *x, int n) {
    ew_vd a0 = ew_dzero(), a1 = ew_dzero();
    int i = 0;
    for (; i + EW_VW <= n; i += EW_VW) {
        const ew_vd d0 = ew_dload(x + i, 0), d1 = ew_dload(x + i, 1);
        a0 = ew_dfma(d0, d0, a0);
        a1 = ew_dfma(d1, d1, a1);
    }
    double s = ew_dsum(a0, a1);
    for (; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

double EW_FN(cpu_sum)(const float *x, int n) {
    ew_vd a0 = ew_dzero(), a1 = ew_dzero();
    int i = 0;
    for (; i + EW_VW <= n; i += EW_VW) {
        a0 = ew_dadd(a0, ew_dload(x + i, 0));
        a1 = ew_dadd(a1, ew_dload(x + i, 1));
    }
    double s = ew_dsum(a0, a1);
    for (; i < n; i++) s += x[i];
    return s;
}

double EW_FN(cpu_sumsqdev)(const float *x, int n, double mean) {
    ew_vd a0 = ew_dzero(), a1 = ew_dzero();
    const ew_vd m = ew_dset1(mean);
    int i = 0;
    for (; i + EW_VW <= n; i += EW_VW) {
        const ew_vd d0 = ew_dsub(ew_dload(x + i, 0), m), d1 = ew_dsub(ew_dload(x + i, 1), m);
        a0 = ew_dfma(d0, d0, a0);
        a1 = ew_dfma(d1, d1, a1);
    }
    double s = ew_dsum(a0, a1);
    for (; i < n; i++) s += ((double)x[i] - mean) * ((double)x[i] - mean);
    return s;
}
