/*
 * vexp.h — exp(x) over F32 vector lanes, shared by the vectorized kernels
 * (elementwise_tmpl.h: swiglu, gelu; attention_avx2.c, attention_avx512.c:
 * the softmax).  Not a public header: include it where the ew_ helpers
 * (ew_v, ew_vi, ew_set1, ew_add, ew_sub, ew_mul, ew_fma, ew_min, ew_max,
 * ew_round, ew_cvt, ew_pow2) and EW_FN are defined — ew_avx2.h or
 * ew_avx512.h — once per translation unit.
 *
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
