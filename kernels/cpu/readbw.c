/* readbw.c — the memory read bandwidth probe (readbw.h): the buffer, the
 * threads, the timing, and the loops of the generic path. */
#include "kernels/cpu/readbw.h"

#include <omp.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

typedef float rb_v __attribute__((vector_size(32)));
#define RB_FN(name) name##_generic
#include "kernels/cpu/readbw_tmpl.h"

static double rb_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The last-level cache in bytes (sysfs: the highest cache index of cpu0), 0 when unknown. */
static size_t llc_bytes(void) {
    size_t best = 0;
    for (int i = 0; i < 8; i++) {
        char path[96], unit = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        FILE *f = fopen(path, "r");
        if (!f) break;
        unsigned long v = 0;
        if (fscanf(f, "%lu%c", &v, &unit) >= 1) {
            size_t b = v * (unit == 'K' ? 1024UL : unit == 'M' ? 1048576UL : 1UL);
            if (b > best) best = b;
        }
        fclose(f);
    }
    return best;
}

size_t cpu_readbw_default_bytes(void) {
    const size_t gib = (size_t)1 << 30, llc8 = 8 * llc_bytes();
    return llc8 > gib ? llc8 : gib;
}

static double rb_sum(cpu_isa isa, const float *p, size_t n, int loop) {
    switch (isa) {
    case CPU_ISA_AVX512:
    case CPU_ISA_AVX512BF16: return cpu_readbw_sum_avx512(p, n, loop);
    case CPU_ISA_AVX2: return cpu_readbw_sum_avx2(p, n, loop);
    default: return cpu_readbw_sum_generic(p, n, loop);
    }
}

/* Thread t's share of n floats: whole 2 KiB runs (512 floats), the static split the kernels use. */
static void rb_share(size_t n, int t, int nt, size_t *lo, size_t *len) {
    const size_t runs = n / 512;
    const size_t a = runs * (size_t)t / (size_t)nt, b = runs * (size_t)(t + 1) / (size_t)nt;
    *lo = a * 512;
    *len = (b - a) * 512;
}

llmq_status cpu_readbw_measure(cpu_readbw *out, cpu_isa isa, size_t bytes, int passes, llmq_err *err) {
    static const char *const loops[2] = {"1 stream", "4 streams + prefetch"};
    if (!bytes) bytes = cpu_readbw_default_bytes();
    if (passes < 1) passes = 1;
    const size_t huge = (size_t)2 << 20;
    bytes = (bytes + huge - 1) / huge * huge;
    const size_t n = bytes / sizeof(float);
    /* mmap: page-aligned, and 2 MiB pages where the kernel gives them
     * (transparent huge pages on madvise), so the pass is not bound by TLB
     * misses the weights' own mappings need not take either */
    float *a = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED)
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "bandwidth probe: cannot map %zu MB", bytes >> 20);
    madvise(a, bytes, MADV_HUGEPAGE);
    const int nt = omp_get_max_threads();
    /* each thread writes its own share first, so its pages sit on its node */
#pragma omp parallel num_threads(nt)
    {
        size_t lo, len;
        rb_share(n, omp_get_thread_num(), omp_get_num_threads(), &lo, &len);
        for (size_t i = lo; i < lo + len; i++) a[i] = (float)(i & 7);
    }
    double best = 0, sink = 0;
    int best_loop = 0;
    for (int r = 0; r < 2 * passes; r++) { /* the two loops interleaved: A B A B ... */
        const int loop = r & 1;
        double total = 0;
        const double t0 = rb_now();
#pragma omp parallel num_threads(nt) reduction(+ : total)
        {
            size_t lo, len;
            rb_share(n, omp_get_thread_num(), omp_get_num_threads(), &lo, &len);
            total += rb_sum(isa, a + lo, len, loop);
        }
        const double gbs = (double)(n / 512 * 512) * sizeof(float) / (rb_now() - t0) / 1e9;
        sink += total;
        if (gbs > best) best = gbs, best_loop = loop;
    }
    munmap(a, bytes);
    out->gbs = sink < 0 ? 0 : best; /* the sums are used, so no pass is optimized away */
    out->bytes = bytes;
    out->threads = nt;
    out->passes = passes;
    out->loop = loops[best_loop];
    out->isa = cpu_isa_name(isa);
    return LLMQ_OK;
}
