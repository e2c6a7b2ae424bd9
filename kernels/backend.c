/* backend.c — dtype helpers and backend selection by name (see backend.h);
 * each backend frees itself (be_ops.destroy). */
#include "kernels/backend.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"

size_t llmq_dtype_size(llmq_dtype dt) {
    switch (dt) {
    case LLMQ_F32: return 4;
    case LLMQ_F16:
    case LLMQ_BF16: return 2;
    case LLMQ_Q8: return 1;
    case LLMQ_Q4: return 0;
    }
    return 0;
}

const char *llmq_dtype_name(llmq_dtype dt) {
    switch (dt) {
    case LLMQ_F32: return "F32";
    case LLMQ_F16: return "F16";
    case LLMQ_BF16: return "BF16";
    case LLMQ_Q8: return "Q8";
    case LLMQ_Q4: return "Q4";
    }
    return "?";
}

#ifdef LLMQ_WITH_CUDA
llmq_backend *cuda_backend_create(llmq_err *err);
#endif

llmq_backend *llmq_backend_create(const char *name, llmq_err *err) {
    if (!name || !strcmp(name, "cpu")) return cpu_backend_create(0, err);
    if (!strcmp(name, "cpu-ref")) return cpu_backend_create(1, err);
    if (!strcmp(name, "cuda")) {
#ifdef LLMQ_WITH_CUDA
        return cuda_backend_create(err);
#else
        llmq_err_set(err, LLMQ_ERR_UNSUPPORTED,
                     "backend \"cuda\" is not built into this binary: build with `make cuda`");
        return NULL;
#endif
    }
    llmq_err_set(err, LLMQ_ERR_INVALID, "unknown backend \"%s\" (known: cpu, cpu-ref, cuda)", name);
    return NULL;
}

void llmq_backend_destroy(llmq_backend *be) {
    if (be) be->ops->destroy(be);
}
