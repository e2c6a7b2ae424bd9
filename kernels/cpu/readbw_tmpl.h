/*
 * readbw_tmpl.h — the bandwidth probe's read loops (readbw.h) for one vector
 * width.  The includer defines rb_v (a GCC vector of floats, 32 or 64 bytes)
 * and RB_FN(name).  Each stream reads two cache lines an iteration into
 * accumulators of its own, so no add waits on another and the loop is bound
 * by memory alone.
 */
#define RB_LINES 2                          /* cache lines a stream reads per iteration */
#define RB_PER ((int)(RB_LINES * 64 / sizeof(rb_v))) /* vectors a stream reads per iteration */
#define RB_STEP (RB_LINES * 64 / 4)         /* floats a stream advances per iteration */
#define RB_AHEAD 1024                       /* bytes a stream prefetches ahead (16 lines) */

static inline rb_v RB_FN(rb_load)(const float *p) {
    rb_v v;
    __builtin_memcpy(&v, __builtin_assume_aligned(p, 64), sizeof v);
    return v;
}

static inline double RB_FN(rb_reduce)(const rb_v *acc, int n) {
    rb_v s = acc[0];
    for (int i = 1; i < n; i++) s += acc[i];
    double t = 0;
    for (int j = 0; j < (int)(sizeof(rb_v) / 4); j++) t += s[j];
    return t;
}

/* One sequential stream. */
static double RB_FN(rb_one)(const float *p, size_t n) {
    rb_v acc[RB_PER];
    for (int j = 0; j < RB_PER; j++) acc[j] = (rb_v){0};
    for (size_t i = 0; i < n; i += RB_STEP)
        for (int j = 0; j < RB_PER; j++) acc[j] += RB_FN(rb_load)(p + i + (size_t)j * (sizeof(rb_v) / 4));
    return RB_FN(rb_reduce)(acc, RB_PER);
}

/* Four streams over the four quarters of p, each prefetched RB_AHEAD ahead. */
static double RB_FN(rb_four)(const float *p, size_t n) {
    rb_v acc[4 * RB_PER];
    for (int j = 0; j < 4 * RB_PER; j++) acc[j] = (rb_v){0};
    const size_t q = n / 4;
    for (size_t i = 0; i < q; i += RB_STEP) {
        for (int s = 0; s < 4; s++) {
            const float *b = p + (size_t)s * q + i;
            __builtin_prefetch((const char *)b + RB_AHEAD, 0, 3);
            __builtin_prefetch((const char *)b + RB_AHEAD + 64, 0, 3);
            for (int j = 0; j < RB_PER; j++) acc[s * RB_PER + j] += RB_FN(rb_load)(b + (size_t)j * (sizeof(rb_v) / 4));
        }
    }
    return RB_FN(rb_reduce)(acc, 4 * RB_PER);
}

double RB_FN(cpu_readbw_sum)(const float *p, size_t n, int loop) {
    return loop ? RB_FN(rb_four)(p, n) : RB_FN(rb_one)(p, n);
}

#undef RB_LINES
#undef RB_PER
#undef RB_STEP
#undef RB_AHEAD
