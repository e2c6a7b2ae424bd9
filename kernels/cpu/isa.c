/* isa.c — run-time choice of the CPU kernels' instruction-set path (isa.h). */
#include "kernels/cpu/isa.h"

#include <stdlib.h>
#include <string.h>

static const char *const isa_names[CPU_ISA_COUNT] = {"generic", "avx2", "avx512", "avx512bf16"};

const char *cpu_isa_name(cpu_isa isa) { return (unsigned)isa < CPU_ISA_COUNT ? isa_names[isa] : "?"; }

int cpu_isa_supported(cpu_isa isa) {
    switch (isa) {
    case CPU_ISA_GENERIC: return 1;
#if defined(__x86_64__)
    /* __builtin_cpu_supports checks XCR0 too: AVX-512 counts only when the
     * OS saves the ZMM and mask registers. */
    case CPU_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case CPU_ISA_AVX512:
        return cpu_isa_supported(CPU_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl");
    case CPU_ISA_AVX512BF16:
        return cpu_isa_supported(CPU_ISA_AVX512) && __builtin_cpu_supports("avx512bf16");
#endif
    default: return 0;
    }
}

int cpu_isa_list(cpu_isa *out) {
    int n = 0;
    for (int i = 0; i < CPU_ISA_COUNT; i++)
        if (cpu_isa_supported((cpu_isa)i)) out[n++] = (cpu_isa)i;
    return n;
}

cpu_isa cpu_isa_best(void) {
    cpu_isa list[CPU_ISA_COUNT];
    return list[cpu_isa_list(list) - 1];
}

llmq_status cpu_isa_select(cpu_isa *out, llmq_err *err) {
    const char *env = getenv("LLMQ_CPU_ISA");
    if (!env || !*env) {
        *out = cpu_isa_best();
        return LLMQ_OK;
    }
    for (int i = 0; i < CPU_ISA_COUNT; i++) {
        if (strcmp(env, isa_names[i])) continue;
        if (!cpu_isa_supported((cpu_isa)i))
            return llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                                "LLMQ_CPU_ISA=%s: this processor does not support it (best here: %s)", env,
                                cpu_isa_name(cpu_isa_best()));
        *out = (cpu_isa)i;
        return LLMQ_OK;
    }
    return llmq_err_set(err, LLMQ_ERR_INVALID, "LLMQ_CPU_ISA=%.32s: unknown (generic, avx2, avx512, avx512bf16)", env);
}
