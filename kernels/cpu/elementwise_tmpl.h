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
 *   ew_vd, ew_dzero, ew_dsq_acc(acc, x, half): acc + x[half]^2 in double
 *   (half 0: the first EW_VW/2 floats at x, 1: the next), ew_dsum (fixed order)
 */

/*
 * exp(x) for F32 lanes: x = n ln2 + r (|r| <= ln2 / 2, ln2 in two parts so
 * n ln2 is exact), exp(r) by a degree-7 polynomial (Horner, FMA), times
 * 2^n built in the exponent bits.  Within 2 ulp of expf over the clamped
 * range [-87.3, 88.7] (below it the result is ~1e-38, not 0: swiglu only
 * adds it to 1).  NaN stays NaN.
 */
static inline __attribute__((always_inline)) ew_v EW_FN(ew_exp)(ew_v x) {
    x = ew_min(ew_max(x, ew_set1(-87.3f)), ew_set1(88.7f));
    const ew_v n = ew_round(ew_mul(x, ew_set1(1.44269504088896341f)));
    ew_v r = ew_fma(n, ew_set1(-0.693359375f), x); /* ln2 = 0.693359375 - 2.12194440e-4 */
    r = ew_fma(n, ew_set1(2.12194440e-4f), r);
    ew_v p = ew_set1(1.9875691500e-4f);
    p = ew_fma(p, r, ew_set1(1.3981999507e-3f));
    p = ew_fma(p, r, ew_set1(8.3334519073e-3f));
    p = ew_fma(p, r, ew_set1(4.1665795894e-2f));
    p = ew_fma(p, r, ew_set1(1.6666665459e-1f));
    p = ew_fma(p, r, ew_set1(5.0000001201e-1f));
    p = ew_fma(p, ew_mul(r, r), ew_add(r, ew_set1(1.0f)));
    /* n reaches 128 at the top of the range, past the largest exponent:
     * scale by 2^n1 and 2^(n - n1), n1 = n / 2 rounded (all exact) */
    const ew_v n1 = ew_round(ew_mul(n, ew_set1(0.5f)));
    return ew_mul(ew_mul(p, ew_pow2(ew_cvt(n1))), ew_pow2(ew_cvt(ew_sub(n, n1))));
}

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

double EW_FN(cpu_sumsq)(const float *x, int n) {
    ew_vd a0 = ew_dzero(), a1 = ew_dzero();
    int i = 0;
    for (; i + EW_VW <= n; i += EW_VW) {
        a0 = ew_dsq_acc(a0, x + i, 0);
        a1 = ew_dsq_acc(a1, x + i, 1);
    }
    double s = ew_dsum(a0, a1);
    for (; i < n; i++) s += (double)x[i] * x[i];
    return s;
}
